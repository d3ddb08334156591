"""The task types as data, the scoring of responses, and the rewards.

A task type is one TaskType record, and TASKS maps each type's name to its record: the self-play loop
(azr.py), the run directory (rundir.py) and the scoring below index it, and nothing else in the trainer
branches on a type's name. The parts the records are made of (task data types, prompt texts, payload
parsers) are in buffers.py; docs/algorithm.md, "Adding a task type", says how to add a fourth.

Scoring a batch of responses gives their correctness (solvers) and validity (proposers) only, with one
executor.run_batch call for the whole batch; the rewards of eq. 4-6 are computed from those at the end
of this file, the solver's and the proposer's side by side.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable

import buffers
from buffers import N_IO, InductionTask, Parsed, Triplet
from executor import run_grouped

ROLES = ("propose", "solve")


# ----------------------------------------------------------------------------------------------------
# The record


@dataclass(frozen=True)
class TaskType:
    """Everything that differs between task types. A proposer is shown references drawn from buffers and
    proposes a payload; the executor runs its validation calls, and once all are ok the task is built
    from their outputs and joins this type's buffer. A solver is shown a task and answers a payload;
    one executor call says whether it is right."""
    task_class: type  # the task dataclass its buffer holds (buffers.Triplet, buffers.InductionTask)
    identity_seed: Callable  # () -> the task an empty buffer starts with
    # Seeding runs its phases in TASKS order; a phase's types propose together and each valid task joins
    # the buffers of all of them, so they hold one task_class (docs/algorithm.md, Seeding).
    seed_phase: str
    references_from: tuple  # names of the buffers a proposer's references come from (their union)
    draw_references: Callable  # (pool, K, rng) -> one proposer prompt's references: a list of tasks
    proposer_prompt: Callable  # references -> the proposer's task text
    parse_proposal: Callable  # answer-block text -> buffers.Parsed, its payload a dict
    proposal_error: Callable  # payload -> why the proposal is invalid before anything runs, "" if nothing is
    validation_calls: Callable  # (payload, references) -> the executor's ("validate", program, input) calls
    make_task: Callable  # (payload, references, outputs) -> the task; outputs: repr(f(input)) per call
    solver_prompt: Callable  # task -> the solver's task text
    parse_solution: Callable  # answer-block text -> buffers.Parsed, its payload a str
    check_call: Callable  # (task, payload) -> the executor call whose status is "ok" iff the answer is right


# ----------------------------------------------------------------------------------------------------
# The three types (docs/algorithm.md, "Three task types, two roles, six groups")


def draw_k(pool: list, k: int, rng: random.Random) -> list:
    """K distinct references, uniformly (K capped at the pool's size)."""
    return rng.sample(pool, min(k, len(pool)))


def draw_one(pool: list, k: int, rng: random.Random) -> list:
    """One reference, uniformly: an induction proposer is shown one program whatever K is."""
    return [rng.choice(pool)]


def nothing_wrong(payload: dict) -> str:
    return ""


def triplet_validation(payload: dict, references: list) -> list:
    return [("validate", payload["program"], payload["input"])]


def make_triplet(payload: dict, references: list, outputs: list[str]) -> Triplet:
    return Triplet(payload["program"], payload["input"], outputs[0])


def duplicate_inputs(payload: dict) -> str:
    """Ten inputs that are not ten different argument lists (compared by syntax tree) show less than asked."""
    if len({buffers.input_syntax(i) for i in payload["inputs"]}) < N_IO:
        return "duplicate_inputs"
    return ""


def induction_validation(payload: dict, references: list) -> list:
    """The proposed inputs run through the reference's program, one call each."""
    return [("validate", references[0].program, i) for i in payload["inputs"]]


def make_induction_task(payload: dict, references: list, outputs: list[str]) -> InductionTask:
    return InductionTask(references[0].program, payload["message"], list(payload["inputs"]), outputs)


def check_output(task: Triplet, answer: str) -> tuple:
    """The predicted output is compared with f(input) as a value; it is never run."""
    return ("check_output", task.program, task.input, answer)


def check_input(task: Triplet, answer: str) -> tuple:
    """Any input for which f returns the output is right. The executor accepts only literal data (and the
    program's own classes) as an answer, so f(...) or an object with a rigged __eq__ scores as wrong."""
    return ("check_input", task.program, answer, task.output)


def check_program(task: InductionTask, answer: str) -> tuple:
    """The candidate program must reproduce every hidden pair."""
    return ("check_program", answer, task.hidden_pairs)


DEDUCTION = TaskType(
    task_class=Triplet,
    identity_seed=buffers.identity_triplet,
    seed_phase="triplets",
    references_from=("deduction",),
    draw_references=draw_k,
    proposer_prompt=buffers.deduction_proposer_prompt,
    parse_proposal=buffers.parse_triplet_proposal,
    proposal_error=nothing_wrong,
    validation_calls=triplet_validation,
    make_task=make_triplet,
    solver_prompt=buffers.deduction_solver_prompt,
    parse_solution=partial(buffers.parse_solver_answer, "output", buffers.output_error),
    check_call=check_output,
)

# Abduction proposes as deduction does (a program and an input, seeded together with deduction's): only
# its references, what its proposer aims at, and its solver differ.
ABDUCTION = replace(
    DEDUCTION,
    references_from=("abduction",),
    proposer_prompt=buffers.abduction_proposer_prompt,
    solver_prompt=buffers.abduction_solver_prompt,
    parse_solution=partial(buffers.parse_solver_answer, "input", buffers.input_error),
    check_call=check_input,
)

INDUCTION = TaskType(
    task_class=InductionTask,
    identity_seed=buffers.identity_induction_task,
    seed_phase="induction",
    references_from=("deduction", "abduction"),  # the seeds are in both: the union has them once
    draw_references=draw_one,
    proposer_prompt=buffers.induction_proposer_prompt,
    parse_proposal=buffers.parse_induction_proposal,
    proposal_error=duplicate_inputs,
    validation_calls=induction_validation,
    make_task=make_induction_task,
    solver_prompt=buffers.induction_solver_prompt,
    parse_solution=partial(buffers.parse_solver_answer, "python", buffers.program_error),
    check_call=check_program,
)

TASKS = {"deduction": DEDUCTION, "abduction": ABDUCTION, "induction": INDUCTION}


def reference_pool(buffer_map: dict, task_type: str) -> list:
    """The tasks a proposer of this type draws its references from: the union of the buffers its record
    names, in their order, each task once (by its key)."""
    unique = {}
    for name in TASKS[task_type].references_from:
        for task in buffer_map[name]:
            unique[task.key()] = task
    return list(unique.values())


# ----------------------------------------------------------------------------------------------------
# Scoring (docs/algorithm.md, Validating a proposal): one executor.run_batch call per function, for the whole batch.


def parse_response(text: str, task_type: str, role: str = "solve", require_think: bool = True) -> Parsed:
    """The payload of a response for this task type and role (buffers.answer_block, then the record's
    parser). Never raises: every malformed case becomes a reason string. require_think=False: see
    buffers.answer_block (the learnability rollouts)."""
    block = buffers.answer_block(text, require_think)
    if not block.ok:
        return block
    if role == "propose":
        return TASKS[task_type].parse_proposal(block.answer)
    return TASKS[task_type].parse_solution(block.answer)


@dataclass
class Proposal:
    parsed: Parsed
    task: Triplet | InductionTask | None  # the validated task, None unless valid
    status: str  # executor status ("ok" when valid), or the parse reason when malformed

    @property
    def valid(self) -> bool:
        return self.task is not None


@dataclass
class Solution:
    parsed: Parsed
    correct: bool
    status: str  # executor status, or the parse reason when malformed


def score_proposals(executor, task_type: str, responses: list[str], references: list | None = None) -> list[Proposal]:
    """Validate proposer responses (docs/algorithm.md, Validating a proposal). references[j]: what response
    j's prompt showed (a list of tasks); a type whose task is built on them needs it (induction)."""
    kind = TASKS[task_type]
    if references is None:
        references = [None] * len(responses)
    parsed = [parse_response(r, task_type, "propose") for r in responses]
    status = [p.reason for p in parsed]
    calls = []  # per response: its validation calls (none unless it parsed and passed proposal_error)
    for j, p in enumerate(parsed):
        if p.ok:
            status[j] = kind.proposal_error(p.payload)
        if p.ok and not status[j]:
            calls.append(kind.validation_calls(p.payload, references[j]))
        else:
            calls.append([])
    results = run_grouped(executor.run_batch, calls)
    proposals = []
    for j, p in enumerate(parsed):
        task = None
        if p.ok and not status[j]:
            failed = [result.status for result in results[j] if result.status != "ok"]
            outputs = [result.output for result in results[j]]
            if failed:
                status[j] = failed[0]
            # A program must return a value. A triplet whose output is None (e.g. f prints instead of
            # returning) is rejected; an induction task needs at least one non-None output.
            elif all(o == "None" for o in outputs):
                status[j] = "returns_none"
            else:
                task = kind.make_task(p.payload, references[j], outputs)
        proposals.append(Proposal(p, task, "ok" if task is not None else status[j]))
    return proposals


def score_solutions(executor, task_type: str, tasks: list, responses: list[str],
                    require_think: bool = True) -> list[Solution]:
    """Score solver responses against their tasks (tasks[j] goes with responses[j]).
    require_think: see parse_response (False for the learnability rollouts)."""
    kind = TASKS[task_type]
    parsed = [parse_response(r, task_type, "solve", require_think) for r in responses]
    calls = []  # per response: its check call, none when malformed
    for task, p in zip(tasks, parsed):
        calls.append([kind.check_call(task, p.payload)] if p.ok else [])
    results = run_grouped(executor.run_batch, calls)
    solutions = []
    for p, result in zip(parsed, results):
        if not p.ok:
            solutions.append(Solution(p, False, p.reason))
        else:
            solutions.append(Solution(p, result[0].status == "ok", result[0].status))
    return solutions


# ----------------------------------------------------------------------------------------------------
# Rewards (docs/algorithm.md, Rewards). The paper:
#
#   eq. 5   r_solve   = 1 if the answer is correct, else 0
#   eq. 4   r_propose = 1 - s if 0 < s < 1, else 0   (s: the mean solve rate of n_solve_samples rollouts)
#   eq. 6   R = r_role if the response is passable; -0.5 if wrong but well formatted; -1 if malformed
#
# The authors' code, which produced the paper's numbers, maps it so (and so do we):
#
#   role      case                                   reward   Rewards field (Config flag)
#   both      malformed response or payload          -1       format_error (--format-penalty)
#   solver    well formed, wrong                     -0.5     wrong (--wrong-penalty)
#   solver    correct                                1
#   proposer  well formed, fails validation          -1       invalid (--invalid-penalty); eq. 6: -0.5
#   proposer  valid, s = 0 or s = 1 (or unmeasured)  -0.5     unlearnable (--unlearnable-penalty); eq. 4: 0
#   proposer  valid, 0 < s < 1                       1 - s


@dataclass
class Rewards:
    """The constants of the table above (the trainer passes its Config's values in)."""
    format_error: float = -1.0
    wrong: float = -0.5
    invalid: float = -1.0
    unlearnable: float = -0.5


def solver_reward(solution: Solution, rewards: Rewards = Rewards()) -> float:
    """Eq. 5 inside eq. 6, with the authors' mapping."""
    if not solution.parsed.ok:
        return rewards.format_error
    if solution.correct:
        return 1.0
    return rewards.wrong


def proposer_reward(proposal: Proposal, solve_rate: float | None, rewards: Rewards = Rewards()) -> float:
    """Eq. 4 inside eq. 6, with the authors' mapping. A valid task without a measured solve rate (its
    solver prompt was too long to roll out) counts as unlearnable."""
    if not proposal.parsed.ok:
        return rewards.format_error
    if not proposal.valid:
        return rewards.invalid
    if solve_rate is None or not 0.0 < solve_rate < 1.0:
        return rewards.unlearnable
    return 1.0 - solve_rate
