"""How well a model follows the six (task type, role) prompts: well-formed and valid response counts.

Samples `--samples` responses per group at the rollout temperature from prompts built exactly as the
trainer builds them (references and tasks from a run's seed buffers, never from an evaluation set),
then parses and validates them with the trainer's own scoring. Prints a Markdown table. With
--int8-decode the samples are decoded as the CPU trainer decodes them (model.int8_decoder), to compare
with fp32 decoding at the same seed.

    python bench/prompts.py --seeds runs/default/seeds --model qwen2.5-coder-0.5b-instruct
"""
import argparse
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import buffers  # noqa: E402
from buffers import TaskBuffer  # noqa: E402
from executor import Executor  # noqa: E402
from model import default_stop_ids, generate, int8_decoder, load_model, recorded_prompt_format  # noqa: E402
from tasks import ROLES, TASKS, reference_pool, score_proposals, score_solutions  # noqa: E402


def task_texts(seed_buffers, task_type, role, count, num_references, rng):
    """`count` (task text, what it was built from) pairs for one group, as the trainer draws them: a
    proposer's references (tasks.reference_pool, the record's draw), a solver's task."""
    kind = TASKS[task_type]
    pool = reference_pool(seed_buffers, task_type)
    jobs = []
    for _ in range(count):
        if role == "propose":
            references = kind.draw_references(pool, num_references, rng)
            jobs.append((kind.proposer_prompt(references), references))
        else:
            task = rng.choice(seed_buffers[task_type].items)
            jobs.append((kind.solver_prompt(task), task))
    return jobs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", required=True, help="a run's seeds/ folder ({deduction,abduction,induction}.jsonl)")
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="HF checkpoint dir or embedded model")
    parser.add_argument("--prompt-format", default="auto", choices=("auto", "chat", "plain"),
                        help="auto: what the model records (chat for the embedded models), else plain")
    parser.add_argument("--samples", type=int, default=16, help="responses per (task type, role) group")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="response length limit")
    parser.add_argument("--num-references", type=int, default=2, help="K for the proposer prompts")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    parser.add_argument("--seed", type=int, default=0, help="seed of task drawing and sampling")
    parser.add_argument("--int8-decode", action="store_true", help="decode with an int8 copy (prefill stays fp32)")
    args = parser.parse_args()

    seed_buffers = {}
    for task_type, kind in TASKS.items():
        path = os.path.join(args.seeds, f"{task_type}.jsonl")
        if not os.path.isfile(path):
            sys.exit(f"bench/prompts.py: no {path}: pass a run's seeds/ folder")
        seed_buffers[task_type] = TaskBuffer(kind.task_class, path)
    model, tokenizer = load_model(args.model)
    prompt_format = args.prompt_format
    if prompt_format == "auto":
        prompt_format = recorded_prompt_format(args.model) or "plain"
    rng = random.Random(args.seed)
    groups = []  # (task_type, role, jobs)
    prompts = []
    for task_type in TASKS:
        for role in ROLES:
            jobs = task_texts(seed_buffers, task_type, role, args.samples, args.num_references, rng)
            groups.append((task_type, role, jobs))
            for text, _ in jobs:
                prompts.append(buffers.encode_prompt(tokenizer, text, prompt_format))
    # one call for all six groups: on a CPU a decode step costs about the same for 16 rows as for 96
    decoder = int8_decoder(model) if args.int8_decode else None
    samples = generate(model, prompts, args.max_new_tokens, temperature=args.temperature,
                       stop_ids=default_stop_ids(tokenizer), seed=args.seed, decoder=decoder)
    texts = [tokenizer.decode(per_prompt[0].tokens, skip_special_tokens=True) for per_prompt in samples]
    rows = []
    with Executor(timeout_s=2.0) as executor:
        for index, (task_type, role, jobs) in enumerate(groups):
            group_texts = texts[index * args.samples:(index + 1) * args.samples]
            group_prompts = prompts[index * args.samples:(index + 1) * args.samples]
            if role == "propose":
                proposals = score_proposals(executor, task_type, group_texts, [references for _, references in jobs])
                well_formed = sum(p.parsed.ok for p in proposals)
                valid = sum(p.valid for p in proposals)
                failures = [p.status for p in proposals if not p.valid]
            else:
                solutions = score_solutions(executor, task_type, [task for _, task in jobs], group_texts)
                well_formed = sum(s.parsed.ok for s in solutions)
                valid = sum(s.correct for s in solutions)
                failures = [s.status for s in solutions if not s.parsed.ok]
            commonest = max(set(failures), key=failures.count) if failures else "-"
            mean_prompt = sum(len(p) for p in group_prompts) / len(group_prompts)
            rows.append((task_type, role, well_formed, valid, commonest, mean_prompt))
    decoding = "int8 decoding" if args.int8_decode else "fp32"
    print(f"\n{args.model} ({decoding}), prompt format {prompt_format}, T={args.temperature}, "
          f"{args.max_new_tokens} new tokens, "
          f"{args.samples} samples per group, tasks from {args.seeds}\n")
    print("| task type | role | well-formed | valid (proposer) / correct (solver) | commonest failure | prompt tokens |")
    print("|---|---|---:|---:|---|---:|")
    for task_type, role, well_formed, valid, commonest, mean_prompt in rows:
        print(f"| {task_type} | {role} | {well_formed}/{args.samples} | {valid}/{args.samples} | {commonest} "
              f"| {mean_prompt:.0f} |")


if __name__ == "__main__":
    main()
