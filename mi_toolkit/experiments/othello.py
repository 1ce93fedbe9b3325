"""Othello world models (``mt.othello``): the game engine, the task, the model ``mi-toolkit othello`` trains, and
the 6x6 model it produced with its default seed, shipped in the package (:func:`pretrained`).

:func:`run_othello` trains an Othello-GPT on random legal games, measures how often its top move is legal (overall
and by move number), fits "mine / theirs / empty" (closed-form ridge, and logistic regression by AdamW as Nanda
trains them) and "black / white / empty" probes at every layer beside their baselines, scores probe edits against
the engine (Li et al. 2023's intervention test, with an equal-norm random control), and writes a run directory with
``report.html``.
"""

import dataclasses
import time
from pathlib import Path

from mi_toolkit.analysis.othello import (
    board_probe_table,
    board_probes,
    legal_rate_by_move,
    move_probabilities,
    probe_positions,
)
from mi_toolkit.analysis.probes import ProbeConfig
from mi_toolkit.core.io import Run, load_json, save_json, save_tensors
from mi_toolkit.core.tl import get_act_name
from mi_toolkit.experiments.runs import PACKAGE_DATA, check_out_dir, load_model, load_run, register_loader
from mi_toolkit.interventions.probe_edits import FlipCases, FlipErrors, evaluate_flips, flip_cases, probe_flip
from mi_toolkit.models.factory import build_model, model_config_dict, model_config_from_dict
from mi_toolkit.models.presets import OTHELLO_PRESETS, othello_model_config
from mi_toolkit.tasks.othello import (
    BLACK,
    EMPTY,
    WHITE,
    IllegalMoveError,
    board_labels,
    board_states,
    flipped,
    legal_from_boards,
    legal_moves,
    players_to_move,
    random_games,
    random_games_and_legal,
    replay,
)
from mi_toolkit.tasks.othello_task import OthelloTask
from mi_toolkit.training.recipes import OTHELLO_RECIPES
from mi_toolkit.training.trainer import train

__all__ = ["BLACK", "EMPTY", "PACKAGED_RUN", "WHITE", "FlipCases", "FlipErrors", "IllegalMoveError", "OthelloConfig",
           "OthelloTask", "board_labels", "board_probe_table", "board_probes", "board_states", "evaluate_flips", "flip_cases", "flipped",
           "legal_from_boards", "legal_moves", "legal_rate_by_move", "move_probabilities", "players_to_move",
           "probe_positions", "pretrained", "probe_flip", "random_games", "random_games_and_legal", "replay",
           "run_othello"]

PACKAGED_RUN = PACKAGE_DATA / "othello_6x6"
"""The run directory of ``mi-toolkit othello --out DIR`` with its defaults (seed 0), shipped without
``checkpoints/``."""


@dataclasses.dataclass(frozen=True)
class OthelloConfig:
    """Settings of :func:`run_othello`.

    Args:
        preset: ``"small"`` (4 layers, d_model 128: the shipped model) or ``"tiny"`` (2 layers, d_model 32, seconds).
        size: board side (even, 4 to 8).
        seed: seeds the model, the training games (``OthelloTask.seed``) and the analysis games.
        steps: override the recipe's number of steps (a batch of fresh games each).
        batch_size: games per step.
        probe_games: games for the probes (apart from the training and evaluation games; a fifth held out). With
            10,000 the logistic probe's held-out accuracy matches its training accuracy (95.06% against 95.07% at
            layer 2 of the shipped model); with 3,000 it fell 0.39 points short of it (94.68%), a probe limited by
            its data rather than by the model (README "Othello").
        edit_cases: flip cases of the intervention test.
        edit_from: the first layer whose ``resid_post`` the probe edit changes (it changes every layer from there
            on); default ``n_layers // 4`` (layer 1 of 4: within 0.01 errors per case of starting at layer 0, well
            ahead of layers 2 and 3; README "Othello").
        edit_margin: :func:`probe_flip`'s margin: the ridge probes' score difference after the edit (their scores
            are least-squares fits of one-hot targets, so 1 is a confident reading; 2 measured best of 0.5-4).
        device: torch device.
    """

    preset: str = "small"
    size: int = 6
    seed: int = 0
    steps: int | None = None
    batch_size: int = 256
    probe_games: int = 10_000
    edit_cases: int = 500
    edit_from: int | None = None
    edit_margin: float = 2.0
    device: str = "cpu"

    def __post_init__(self):
        if self.preset not in OTHELLO_PRESETS:
            raise ValueError(f"preset must be one of {sorted(OTHELLO_PRESETS)}, got {self.preset!r}")
        random_games(0, self.size)  # validates the size
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 1 or self.probe_games < 10 or self.edit_cases < 1 or not self.edit_margin > 0:
            raise ValueError("need batch_size >= 1, probe_games >= 10, edit_cases >= 1 and edit_margin > 0")

    @property
    def recipe(self):
        recipe = OTHELLO_RECIPES[self.preset]
        return recipe if self.steps is None else recipe.replace(steps=self.steps)

    def task(self) -> OthelloTask:
        """The task: every training game fresh (``n_games = steps * batch_size``)."""
        return OthelloTask(self.size, n_games=self.recipe.steps * self.batch_size, seed=self.seed,
                           batch_size=self.batch_size, device=self.device)


def run_othello(out: str | Path | None, config: OthelloConfig = OthelloConfig(), *, progress: bool = True,
                report: bool = True) -> Run:
    """Train an Othello-GPT, probe it, edit it along its probes, and write the run directory ``out``.

    Bad input (a bad size or preset, an ``out`` holding a different run) raises before any training; an
    interrupted run resumes from its last checkpoint.

    Returns:
        A :class:`~mi_toolkit.core.io.Run`; ``analysis`` holds ``legal_top1`` (held-out games), ``legal_by_move``,
        ``n_params``, ``games_seen``, ``steps``, the probe tables (``probes``), the edit errors (``edits``) and
        ``seconds`` (``train`` adds up the calls that trained this directory and recorded an analysis, so running a
        finished run again re-analyses it without losing its training time).
    """
    task = config.task()
    model = build_model(othello_model_config(task.d_vocab, task.n_ctx, **OTHELLO_PRESETS[config.preset]),
                        seed=config.seed, device=config.device)
    task.check_model(model)
    _edit_start(config, model.cfg.n_layers)
    record = {"kind": "othello", "config": dataclasses.asdict(config), "seed": config.seed,
              "task": {k: v for k, v in dataclasses.asdict(task).items() if k != "device"},
              "model": model_config_dict(model.cfg), "train": config.recipe.to_dict()}
    trained_before = 0.0
    if out is not None:
        out = Path(out)
        check_out_dir(out, record, ("task", "model"))
        if (out / "analysis.json").is_file():
            trained_before = load_json(out / "analysis.json").get("seconds", {}).get("train", 0.0)
        out.mkdir(parents=True, exist_ok=True)
        save_json(out / "config.json", record)
    started = time.perf_counter()
    result = train(model, task, config.recipe, out, progress=progress)
    seconds = {"train": round(trained_before + time.perf_counter() - started, 2)}
    model.eval()
    started = time.perf_counter()
    analysis = analyse_othello(model, task, config)
    seconds["analysis"] = round(time.perf_counter() - started, 2)
    analysis.update(steps=result.final_step, games_seen=result.final_step * task.batch_size,
                    resumed_from=result.resumed_from, precision=result.precision, seconds=seconds)
    if out is not None:
        save_tensors(out / "model.safetensors", model.state_dict())
        save_json(out / "analysis.json", analysis)
        if report:
            from mi_toolkit.report import write_othello_report

            write_othello_report(out / "report.html", model, task, result.history, analysis)
    return Run(out, model, task, result.history, record, analysis)


def _edit_start(config: OthelloConfig, n_layers: int) -> int:
    start = n_layers // 4 if config.edit_from is None else config.edit_from
    if not 0 <= start < n_layers:
        raise ValueError(f"edit_from must lie in [0, {n_layers}) for this model, got {start}")
    return start


def analyse_othello(model, task: OthelloTask, config: OthelloConfig) -> dict:
    """The numbers of the report: legal-move rates, probes with baselines, probe edits (see :func:`run_othello`)."""
    evaluation = task.evaluate(model, by_move=True)
    games = random_games(config.probe_games, task.size, seed=(config.seed, 2))
    positions = probe_positions(task)
    mine = board_probes(model, task, games, "mine", positions=positions)
    logistic = board_probes(model, task, games, "mine", ProbeConfig(method="adamw"), positions=positions)
    colour = board_probes(model, task, games, "colour", positions=positions, random_model=False)
    best = max(mine.test, key=lambda name: mine.test[name].overall)
    layers = [get_act_name("resid_post", layer) for layer in range(model.cfg.n_layers)]
    start = _edit_start(config, model.cfg.n_layers)
    cases = flip_cases(random_games(config.edit_cases * 2, task.size, seed=(config.seed, 3)), task.size,
                       config.edit_cases, seed=config.seed, first_move=positions.start, last_move=positions.stop - 1)
    by_start = {}
    for first in range(model.cfg.n_layers):
        errors = evaluate_flips(model, task, {name: mine.probes[name] for name in layers[first:]}, cases,
                                margin=config.edit_margin, seed=config.seed)
        by_start[first] = {"none": errors.none, "probe": errors.probe, "random": errors.random,
                           "reduction": errors.reduction}
        if first == start:
            edits = errors
    by_margin = {}
    for margin in (0.5, 1.0, 2.0, 4.0):
        errors = evaluate_flips(model, task, {name: mine.probes[name] for name in layers[start:]}, cases,
                                margin=margin, seed=config.seed)
        by_margin[margin] = {"probe": errors.probe, "random": errors.random, "reduction": errors.reduction}
    return {
        "legal_top1": evaluation["legal_top1"],
        "heldout_loss": evaluation["loss"],
        "legal_by_move": [round(x, 5) for x in evaluation["legal_by_move"].tolist()],
        "n_params": sum(p.numel() for p in model.parameters()),
        "probes": {"mine": board_probe_table(mine), "mine_logistic": board_probe_table(logistic),
                   "colour": board_probe_table(colour), "best_layer": best,
                   "n_games": config.probe_games, "positions": [positions.start, positions.stop - 1]},
        "edits": {"hook_names": list(edits.hook_names), "none": edits.none, "probe": edits.probe,
                  "random": edits.random, "unedited": edits.unedited, "reduction": edits.reduction,
                  "threshold": edits.threshold, "margin": edits.margin, "cases": config.edit_cases,
                  "by_first_layer": by_start, "by_margin": by_margin},
        "example_game": random_games(1, task.size, seed=(config.seed, 4))[0].tolist(),
    }


def pretrained(device: str = "cpu") -> Run:
    """The 6x6 Othello-GPT shipped in the package (:data:`PACKAGED_RUN`: ``mi-toolkit othello`` with its defaults),
    as a :class:`~mi_toolkit.core.io.Run` (``.model``, ``.task``, ``.analysis``): ``mt.load_packaged("othello_6x6")``.
    """
    return load_run(PACKAGED_RUN, device=device)


def _load(path: Path, record: dict, device: str) -> Run:
    task = OthelloTask(**record["task"], device=device)
    model = build_model(model_config_from_dict(record["model"]), device=device)
    return Run(path, load_model(path, model).eval(), task, [], record, {})


register_loader("othello", _load)
