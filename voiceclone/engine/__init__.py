"""The batch engine and what it runs on: batching, speech-token decoding, the runtime (device, dtype) and CUDA."""
