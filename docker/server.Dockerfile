# The API server: no torch, no GPU. Runs `alembic upgrade head`, then serves.
FROM python:3.11-slim
WORKDIR /srv
COPY pyproject.toml README.md alembic.ini ./
COPY contract ./contract
COPY app ./app
COPY profiler ./profiler
COPY wtacrs ./wtacrs
RUN pip install --no-cache-dir ".[server]"
EXPOSE 8000
CMD ["sh", "-c", "alembic upgrade head && uvicorn --factory app.main:create_app --host 0.0.0.0 --port 8000"]
