// The page's AudioWorklet: microphone audio -> 16 kHz 16-bit PCM, posted to the page about every
// 100 ms (ArrayBuffers the page sends on the WebSocket as they are). The page asks the
// AudioContext for 16 kHz, which Chrome and Firefox honour with their own resampler; where the
// context runs at another rate, this resamples by linear interpolation after a moving-average
// low-pass (adequate for speech recognition, not for listening).
const TARGET_RATE = 16000;
const BLOCK = 1600; // samples at 16 kHz per message: 100 ms

class Pcm16Sender extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / TARGET_RATE; // input samples per output sample
    this.taps = Math.max(1, Math.round(this.step)); // the low-pass's width
    this.history = new Float32Array(this.taps); // the last input samples, for the low-pass
    this.filled = 0;
    this.position = 1; // where the next output sample lies in `filtered` below (1: the current quantum's first sample)
    this.previous = 0; // the last filtered input sample of the quantum before
    this.out = new Int16Array(BLOCK);
    this.count = 0;
    this.port.onmessage = (event) => { if (event.data === "flush") this.flush(); };
  }

  push(sample) {
    const s = Math.max(-1, Math.min(1, sample));
    this.out[this.count++] = s < 0 ? s * 32768 : s * 32767;
    if (this.count === BLOCK) this.send();
  }

  send() { // the samples gathered so far, as one message
    if (this.count > 0) {
      const block = this.out.slice(0, this.count);
      this.port.postMessage(block.buffer, [block.buffer]);
      this.count = 0;
    }
  }

  flush() { // the page's stop: the last samples, then "flushed" (the page sends the eof after them)
    this.send();
    this.port.postMessage("flushed");
  }

  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    if (!input) return true;
    if (this.step === 1) {
      for (let i = 0; i < input.length; i++) this.push(input[i]);
      return true;
    }
    const n = input.length;
    const filtered = new Float32Array(n + 1); // the quantum before's last filtered sample, then this quantum's
    filtered[0] = this.previous;
    for (let i = 0; i < n; i++) { // moving average over `taps` samples
      this.history[this.filled++ % this.taps] = input[i];
      let sum = 0;
      for (let k = 0; k < this.taps; k++) sum += this.history[k];
      filtered[i + 1] = sum / this.taps;
    }
    while (this.position < n) { // linear interpolation, across the quanta's boundary too
      const i = Math.floor(this.position), frac = this.position - i;
      this.push(filtered[i] + (filtered[i + 1] - filtered[i]) * frac);
      this.position += this.step;
    }
    this.position -= n;
    this.previous = filtered[n];
    return true;
  }
}

registerProcessor("pcm16-sender", Pcm16Sender);
