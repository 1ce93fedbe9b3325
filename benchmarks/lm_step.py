"""The training step of ``mi-toolkit lm``'s model (one layer, d_model 128, d_mlp 512, vocabulary 4096, 32 windows of
128 tokens), measured side by side in one run:

- the loss: :func:`~mi_toolkit.core.losses.next_token_loss` (the last position's target ignored) against the same
  cross-entropy over sliced logits (``logits[:, :-1]``, what it computed before), plain steps of AdamW;
- the allocator: 40 steps through :func:`mi_toolkit.train` with :mod:`mi_toolkit.training.heap` on and off (its
  glibc handle replaced by None), with the system time and page faults of each, and the weights of both compared.

Run from the repository root: ``python benchmarks/lm_step.py [--threads 2] [--rounds 6]``. Random tokens stand in for
the corpus (the step's cost does not depend on which tokens they are).
"""

import argparse
import resource
import statistics
import time

import torch

from mi_toolkit import train
from mi_toolkit.core.losses import answer_loss, next_token_loss
from mi_toolkit.experiments.lm import lm_model_config
from mi_toolkit.models.factory import build_model
from mi_toolkit.tasks.text import TextTask
from mi_toolkit.training import heap
from mi_toolkit.training.recipes import LM

D_VOCAB = 4096


def sliced_loss(logits, tokens):
    """The cross-entropy over ``logits[:, :-1]``: the same value, by a copy of the logits."""
    return answer_loss(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())


def losses(rounds: int, steps: int) -> dict[str, list[float]]:
    """Seconds a step of each loss, in alternating rounds of ``steps`` steps."""
    model = build_model(lm_model_config(D_VOCAB), seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = torch.randint(0, D_VOCAB, (32, 128), generator=torch.Generator().manual_seed(0))

    def step(loss_fn):
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(batch), batch).backward()
        optimizer.step()

    times = {"sliced logits": [], "next_token_loss": []}
    for _ in range(rounds):
        for name, loss_fn in (("sliced logits", sliced_loss), ("next_token_loss", next_token_loss)):
            step(loss_fn)
            started = time.perf_counter()
            for _ in range(steps):
                step(loss_fn)
            times[name].append((time.perf_counter() - started) / steps)
    return times


def through_trainer(on: bool, steps: int) -> dict:
    """``steps`` steps of the LM recipe through the trainer, with the heap setting ``on`` or off."""
    real = heap.glibc
    heap.glibc = real if on else (lambda: None)
    try:
        gen = torch.Generator().manual_seed(0)
        task = TextTask(torch.randint(0, D_VOCAB, (2_000_000,), generator=gen),
                        torch.randint(0, D_VOCAB, (100_000,), generator=gen), D_VOCAB)
        model = build_model(lm_model_config(D_VOCAB), seed=0)
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        train(model, task, LM.replace(steps=steps, log_every=10_000, checkpoint_every=10_000), progress=False)
        seconds, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    finally:
        heap.glibc = real
    return {"step": seconds / steps, "system": (after.ru_stime - before.ru_stime) / steps,
            "faults": (after.ru_minflt - before.ru_minflt) / steps, "weights": model.state_dict()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds of the loss comparison")
    parser.add_argument("--steps", type=int, default=8, help="steps a round")
    parser.add_argument("--trainer-steps", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.threads} threads; glibc: {heap.glibc() is not None}")

    times = losses(args.rounds, args.steps)
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        print(f"  {name:16s} s/step {' '.join(f'{x:.3f}' for x in t)}  median {medians[name]:.3f}")
    print(f"loss: next_token_loss {medians['sliced logits'] / medians['next_token_loss']:.2f}x the sliced logits' "
          "step rate (medians)")

    runs = {}
    for on in (False, True, False, True):
        run = through_trainer(on, args.trainer_steps)
        runs.setdefault(on, []).append(run)
        print(f"  trainer, heap {'on ' if on else 'off'}: s/step {run['step']:.3f}, system {run['system']:.3f} s/step, "
              f"{run['faults']:,.0f} page faults/step")
    best = {on: min(r["step"] for r in rs) for on, rs in runs.items()}
    same = all(torch.equal(v, runs[True][0]["weights"][k]) for k, v in runs[False][0]["weights"].items())
    print(f"heap: {best[False] / best[True]:.2f}x the step rate (best of 2 each); the same weights: {same}")


if __name__ == "__main__":
    main()
