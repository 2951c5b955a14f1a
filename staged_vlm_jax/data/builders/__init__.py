"""Data builders: the paper's offline data pipeline (UCSC-VLAA/VLM-CapCurriculum ``data_pipeline/``, commit d58a584).

* `perception`: Stage-1 MCQs from image captions — generate one MCQ per caption (``generate_qa.py``), keep those
  that filter models get wrong from the image and right from the caption (``filter_perception.py``), write them as
  training rows (``format_for_training.py``): ``staged-vlm data build-perception``.
* `pass_rate`: k sampled answers per training row, graded, as the released sets' ``predictions`` / ``correctness``
  / ``pass_rate`` columns that the difficulty curricula sort by (``passK/``): ``staged-vlm data pass-rate``.

Both ask a `generators.Generator` (a local model on the rollout engine, or an OpenAI-compatible endpoint) and append
every batch's results to jsonl files (`resumable.resume`), so a killed build rerun on the same output continues where it
stopped.
"""
