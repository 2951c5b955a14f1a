"""One "host" of a two-process JAX run (``jax.distributed`` on localhost, CPU): prints the row ids this process's
default-sharded pipeline draws in one epoch. Run by tests/data/test_pipeline.py."""

import json
import sys

import jax

from staged_vlm_jax.data.pipeline import DataSource, ExampleSource, PipelineConfig, example_dataset
from staged_vlm_jax.data.sources import read_rows

if __name__ == "__main__":
    port, process_id, rows_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
    source = DataSource(rows_path, "perception")
    # shard_index / shard_count default to jax.process_index() / jax.process_count().
    config = PipelineConfig((source,), batch_size=2, prompt_buckets=(512,), max_prompt_length=512, seed=0)
    assert (config.shard_index, config.shard_count) == (process_id, 2)
    examples = [
        ExampleSource(list(read_rows(source.path, capability=source.capability, verify_images=False)), str(source.path))
    ]
    dataset = example_dataset(config, examples)
    print(json.dumps([dataset[i].id for i in range(len(dataset))]))
    jax.distributed.shutdown()
