"""Profiles for a whole population, computed in bulk and written into the service's cache.

`run_batch(job)` reads `{user_id, features}` rows (a JSONL or Parquet file, or a data set in the
generic format turned into features by the training protocol), computes each profile with the
service's own torch-free engine (`service.engine`) and writes the record `GET /profile/<user>`
reads (`service.profile_record`, `service.cache.profile_key`) into Redis. Chunks of rows are the
unit of work, of the checkpoint (`--resume`) and of a Redis pipeline; the engine is a pool of
local processes or a Ray Data actor pool. docs/batch.md.
"""

from batch.job import BatchJob, Summary
from batch.runner import run_batch

__all__ = ["BatchJob", "Summary", "run_batch"]
