"""Evaluation: benchmark scorers, datasets and runners, token accounting, and the VLMEvalKit / lmms-eval adapters.

    minicpmv.eval.scorers   pure scoring functions (extract_choice, normalize_yes_no, final_answer,
                            vqa_accuracy, anls, relaxed_accuracy, ocrbench_hit / ocrbench_summary,
                            hallusion_summary, accuracy_by, all_correct_rate)
    minicpmv.eval.prompts   official per-benchmark settings (BENCHMARKS, resolve_benchmark,
                            official_settings -> RunSettings) and prompt builders (build_mcq_prompt,
                            build_yes_no_prompt, build_vqa_prompt, build_video_mcq_prompt, upsize_image, row_rng)
    minicpmv.eval.datasets  readers: read_tsv (VLMEvalKit TSV), read_video_questions (Video-MME JSON/JSONL),
                            parse_srt, subtitles_at, load_images
    minicpmv.eval.runner    evaluate(...) -> RunReport: the resumable benchmark loop (`minicpmv eval bench`)
    minicpmv.eval.tokens    visual token accounting (ours vs Qwen2.5-VL)
    minicpmv.eval.adapters  VLMEvalKit and lmms-eval model classes

Importing this package imports none of them (torch stays unloaded until a submodule is used).
"""
