"""Layer 8: experiments, end-to-end jobs (task + model + training + analysis + report) that write run directories
and return a :class:`~mi_toolkit.core.io.Run`; :func:`load_run` reads any of them back."""

from mi_toolkit.experiments.facts import FactsConfig, load_packaged_fact_model, run_facts, trace_facts
from mi_toolkit.experiments.grokking import GrokkingConfig, algorithm_checks, analyse, run_grokking
from mi_toolkit.experiments.groups import GroupsConfig, run_groups
from mi_toolkit.experiments.induction import train_induction_model, train_ioi_model
from mi_toolkit.experiments.lm import LMConfig, run_lm
from mi_toolkit.experiments.miiii import MiiiiConfig, run_miiii
from mi_toolkit.experiments import othello
from mi_toolkit.experiments.othello import OthelloConfig, run_othello
from mi_toolkit.experiments.packaged import load_packaged
from mi_toolkit.experiments.runs import load_run
from mi_toolkit.experiments.sweeps import sweep
