"""`python -m mow.finetune.worker JOB.json`: one rank of a distributed training launch (see `mow.finetune.launch`).

`accelerate launch` starts this on every process; each trains its share under DDP or DeepSpeed, and rank 0 writes
the adapter and the result JSON the launching pipeline reads.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from mow.finetune.job import TrainJob, read_examples, run_job
from mow.workbench.rundir import write_json


def main(job_path: str) -> None:
    job = TrainJob.model_validate_json(Path(job_path).read_text())
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))  # "cuda" is this rank's GPU from here on
    result, _ = run_job(job, read_examples(job))
    if int(os.environ.get("RANK", 0)) == 0:
        if job.result_path is None:
            raise ValueError(f"{job_path}: the job names no result_path (set for a launch)")
        write_json(job.result_path, result.to_dict())


if __name__ == "__main__":
    main(sys.argv[1])
