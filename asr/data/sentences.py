"""The built-in corpus's sentences: a small template grammar ("she found the red basket in the
kitchen yesterday") whose word lists are dealt like cards, in shuffled passes, so that a corpus of
~3000 utterances uses every VOCABULARY word while no two sentences are the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_NAMES = """alice anna ben carlos chloe daniel david ellen emma frank george grace hannah henry ian
isabel jack julia kate kevin laura liam maria mike nina nora oliver paul peter rachel rosa sam sarah
steve tina tom victor walter wendy zoe""".split()
_PEOPLE = """mother father sister brother uncle aunt cousin friend neighbor teacher doctor boss
grandmother grandfather roommate""".split()
# "singular" (plural adds s) or "singular:plural"
_NOUNS = """book box:boxes bottle basket blanket bicycle bucket camera candle card carpet chair clock
coat computer cup desk dish:dishes door drawer envelope fork glass:glasses glove guitar hammer hat
helmet jacket jar kettle key knife:knives ladder lamp letter map mirror notebook orange package pan
pen pencil phone piano picture pillow plate pot radio ribbon ring rope ruler sandwich:sandwiches
scarf:scarves shirt shoe spoon stamp suitcase sweater table teapot ticket towel toy truck umbrella
vase wallet watch:watches window apple banana cake carrot cookie egg lemon potato:potatoes
tomato:tomatoes onion peach:peaches cherry:cherries puppy:puppies kitten rabbit bird
mouse:mice""".split()
_PLACES = """kitchen garden station library market school office park river bridge hospital museum
beach forest village harbor bakery theater airport church castle farm island hotel restaurant studio
stadium factory lake mountain valley basement attic cellar gallery pharmacy bank garage hallway
classroom playground supermarket""".split()
_ADJECTIVES = """red blue green yellow purple brown black white gray pink golden silver big small tiny
huge heavy light long short tall wide narrow round square flat old new young ancient modern fresh
clean dirty broken empty full soft hard warm cold hot cool wet dry smooth rough sharp quiet loud
bright dark shiny dusty strange famous beautiful ugly lovely cheap expensive simple fancy wooden
plastic metal woolen cotton leather striped spotted lucky secret special useful useless valuable
precious delicate comfortable colorful elegant enormous fragile""".split()
# "base:past"
_VERBS = """bring:brought buy:bought carry:carried clean:cleaned drop:dropped find:found fix:fixed
grab:grabbed hide:hid hold:held keep:kept lift:lifted lose:lost move:moved open:opened
paint:painted push:pushed pull:pulled sell:sold send:sent show:showed steal:stole take:took
throw:threw wash:washed wrap:wrapped borrow:borrowed return:returned check:checked choose:chose
deliver:delivered draw:drew fill:filled fold:folded hang:hung leave:left measure:measured
order:ordered pack:packed polish:polished repair:repaired replace:replaced shake:shook
sketch:sketched sort:sorted store:stored touch:touched weigh:weighed win:won bake:baked cook:cooked
catch:caught break:broke forget:forgot give:gave get:got like:liked need:needed notice:noticed
remember:remembered see:saw spot:spotted watch:watched want:wanted""".split()
_ADVERBS = """quickly slowly carefully quietly suddenly finally gently happily proudly nervously
secretly calmly easily eagerly politely patiently rarely often always never usually already almost
barely""".split()
_PREPOSITIONS = "in near behind beside inside outside across around toward".split()
_DETERMINERS = "the this that my your his her our their".split()
_DAYS = "monday tuesday wednesday thursday friday saturday sunday".split()
_MONTHS = """january february march april may june july august september october november
december""".split()
_HOURS = "one two three four five six seven eight nine ten eleven twelve".split()
_NUMBERS = list(range(2, 100)) + [100 * k for k in range(1, 10)] + [1000 * k for k in range(1, 6)]
_ONES = """zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen
fifteen sixteen seventeen eighteen nineteen""".split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()  # 20, 30, ... 90

# Time phrases: {day}, {month} and {hour} are dealt from their own lists.
_PAST_TIMES = (
    "yesterday|yesterday afternoon|this morning|early this morning|last night|last week|last month|"
    "last year|two days ago|at noon|at midnight|before breakfast|after lunch|after dinner|"
    "on {day}|last {day}|in {month}|at {hour} o'clock"
).split("|")
_FUTURE_TIMES = (
    "tomorrow|tomorrow morning|tonight|soon|later today|next week|next month|next year|"
    "before dinner|after breakfast|on {day}|next {day}|in {month}|at {hour} o'clock"
).split("|")

# 8 to 14 words once filled: {number} is 1-2 words, {time}/{later} 1-3.
_TEMPLATES = (
    "{name} {past} {det} {adj} {noun} {prep} the {place} {time}",
    "{time} {name} and {name} {past} {number} {adj} {nouns}",
    "i think {det} {noun} is {prep} the {adj} {place}",
    "please {base} {det} {adj} {noun} and put it {prep} the {place}",
    "there were {number} {adj} {nouns} {prep} the {place} {time}",
    "{name} didn't {base} {det} {noun} because it was too {adj}",
    "{poss} {noun} was {prep} the {place} next to {det} {adj} {noun}",
    "we {adverb} {past} {number} {nouns} for the {adj} {place} {time}",
    "can you {base} {det} {noun} before {name} comes back from the {place}",
    "{det} {adj} {noun} and {det} {adj} {noun} are {prep} the {place}",
    "{name} {adverb} {past} {poss} {adj} {noun} at the {place} {time}",
    "they won't {base} any {nouns} until {name} finds {det} {adj} {noun}",
    "let's {base} {det} {adj} {noun} {prep} the {place} {later}",
    "my {person} {past} {number} {adj} {nouns} at the {place} {time}",
    "i couldn't {base} {det} {noun} because {name} {past} it {time}",
    "will {name} {base} {det} {adj} {noun} {prep} the {place} {later}",
    "{poss} {person} {adverb} {past} {det} {noun} and {past} it {time}",
)


def spell_number(n: int) -> str:
    """1 <= n < 10000 as English words, the way the char model must write it: 42 -> forty two."""
    if not 1 <= n < 10000:
        raise ValueError(f"spell_number: {n} is outside 1..9999")
    words = []
    if n >= 1000:
        words += [_ONES[n // 1000], "thousand"]
        n %= 1000
    if n >= 100:
        words += [_ONES[n // 100], "hundred"]
        n %= 100
    if n >= 20:
        words.append(_TENS[n // 10 - 2])
        n %= 10
    if n:
        words.append(_ONES[n])
    return " ".join(words)


def _split_pairs(entries: list[str]) -> tuple[list[str], list[str]]:
    """Entries "a:b" -> ([a, ...], [b, ...]); a bare "a" means b = a + "s"."""
    firsts, seconds = [], []
    for entry in entries:
        first, _, second = entry.partition(":")
        firsts.append(first)
        seconds.append(second or first + "s")
    return firsts, seconds


_NOUNS_SINGULAR, _NOUNS_PLURAL = _split_pairs(_NOUNS)
_VERBS_BASE, _VERBS_PAST = _split_pairs(_VERBS)

# What each {slot} is dealt from. Phrase slots ({time}, {later}) hold templates of their own.
_SLOTS: dict[str, list[str]] = {
    "name": _NAMES,
    "poss": [name + "'s" for name in _NAMES],
    "person": _PEOPLE,
    "noun": _NOUNS_SINGULAR,
    "nouns": _NOUNS_PLURAL,
    "place": _PLACES,
    "adj": _ADJECTIVES,
    "base": _VERBS_BASE,
    "past": _VERBS_PAST,
    "adverb": _ADVERBS,
    "prep": _PREPOSITIONS,
    "det": _DETERMINERS,
    "day": _DAYS,
    "month": _MONTHS,
    "hour": _HOURS,
    "number": [spell_number(n) for n in _NUMBERS],
    "time": _PAST_TIMES,
    "later": _FUTURE_TIMES,
}


def _literal_words(phrases: Sequence[str]) -> set[str]:
    return {word for phrase in phrases for word in phrase.split() if not word.startswith("{")}


VOCABULARY: tuple[str, ...] = tuple(
    sorted(_literal_words(_TEMPLATES) | set().union(*(_literal_words(items) for items in _SLOTS.values())))
)


class Deck:
    """Deals items in shuffled passes: each item once per pass, so every word gets used."""

    def __init__(self, items: Sequence[str], rng: np.random.Generator):
        self.items = items
        self.rng = rng
        self.order: list[int] = []

    def deal(self) -> str:
        if not self.order:
            self.order = self.rng.permutation(len(self.items)).tolist()
        return self.items[self.order.pop()]


def _fill(template: str, decks: dict[str, Deck]) -> str:
    words = []
    for token in template.split():
        if token.startswith("{"):
            words.append(_fill(decks[token[1:-1]].deal(), decks))  # a dealt phrase may hold slots
        else:
            words.append(token)
    return " ".join(words)


def generate_sentences(num: int, rng: np.random.Generator) -> list[str]:
    """`num` distinct sentences: lowercase words, apostrophes and single spaces, numbers spelled
    out. Templates and every word list are dealt in shuffled passes, so the first few thousand
    sentences use the whole VOCABULARY. Same generator state -> same sentences."""
    decks = {slot: Deck(items, rng) for slot, items in _SLOTS.items()}
    templates = Deck(_TEMPLATES, rng)
    sentences: dict[str, None] = {}  # insertion-ordered set
    for _ in range(100 * num + 100):  # duplicates are rare; this bound only stops a runaway loop
        if len(sentences) == num:
            return list(sentences)
        sentences.setdefault(_fill(templates.deal(), decks))
    raise RuntimeError(f"generate_sentences: could not find {num} distinct sentences")
