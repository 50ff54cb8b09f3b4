"""A worker's Prometheus metrics. The heartbeat publishes them to Redis, and the API's /metrics
merges every live worker's into one scrape (labelled by worker), so one target shows the fleet."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry()

BATCH_SIZE = Histogram(
    "omega_worker_batch_size", "Requests per generate call", buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=REGISTRY
)
GENERATE_SECONDS = Histogram(
    "omega_worker_generate_seconds",
    "Wall time of one batched generate call",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
    registry=REGISTRY,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "omega_worker_time_to_first_token_seconds",
    "From the start of a batch's generate call to a row's first token",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
GENERATED_TOKENS = Counter("omega_worker_generated_tokens", "Completion tokens generated", registry=REGISTRY)
PROMPT_TOKENS = Counter("omega_worker_prompt_tokens", "Prompt tokens processed", registry=REGISTRY)
IMAGES = Counter("omega_worker_images", "Images fed to the model", registry=REGISTRY)
JOBS = Counter("omega_worker_jobs", "Jobs finished by outcome", ["outcome"], registry=REGISTRY)
GPU_MEMORY = Gauge("omega_worker_gpu_memory_bytes", "CUDA memory of this worker's device", ["kind"], registry=REGISTRY)
IMAGE_CACHE = Gauge(
    "omega_worker_image_cache_lookups", "Decoded-image cache lookups since start", ["result"], registry=REGISTRY
)

# The continuous engine's load (ENGINE=continuous), as of its last decoding step.
RUNNING_ROWS = Gauge("omega_worker_running_rows", "Rows in the running decode batch", registry=REGISTRY)
FREE_SLOTS = Gauge("omega_worker_free_slots", "Rows the running batch can still admit", registry=REGISTRY)
KV_TOKENS = Gauge(
    "omega_worker_kv_tokens", "KV tokens the running rows may reach (bounded by MAX_BATCH_TOKENS)", registry=REGISTRY
)


def snapshot() -> bytes:
    return generate_latest(REGISTRY)
