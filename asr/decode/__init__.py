from asr.decode.greedy import decode_greedy

__all__ = ["decode_greedy"]
