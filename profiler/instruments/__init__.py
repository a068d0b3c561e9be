"""What measures: the storage tracker, the CPU allocator's record, the CUDA device model and its
autocast lists, the saved-tensor attribution counter, the environment. Imports nothing else of
the profiler."""
