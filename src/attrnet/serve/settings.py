"""ServeSettings: what `attrnet serve` takes besides the model (no FastAPI needed to build one)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ServeSettings:
    """What `attrnet serve` takes besides the model: batching, limits, authentication, CORS."""

    max_batch: int = 32                 # images per forward pass
    max_wait_ms: float = 5.0            # how long a batch waits for more images once it has one
    max_upload_mb: float = 20.0         # bytes per request, refused while streaming
    max_files: int = 16                 # images per request
    upload_timeout_s: float = 60.0      # a request body must arrive within this
    api_key: str | None = None          # when set, /v1/* needs it in the X-API-Key header
    cors_origins: list[str] = field(default_factory=list)   # empty: no CORS headers at all
    decode_threads: int = 2             # threads decoding and resizing uploads

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)
