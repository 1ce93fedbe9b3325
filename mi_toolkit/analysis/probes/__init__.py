"""Linear probes (``mt.probes``): :func:`fit_probe` and the :class:`Probe` it returns (``probe``), and
:func:`probe_layers`, a probe per hook point from one forward pass with its baselines (``layers``). ``_fit`` holds the
two solvers (ridge normal equations, AdamW logistic regression)."""

from mi_toolkit.analysis.probes.layers import LayerProbes, probe_layers
from mi_toolkit.analysis.probes.probe import Probe, ProbeAccuracy, ProbeConfig, fit_probe, load_probe

__all__ = ["LayerProbes", "Probe", "ProbeAccuracy", "ProbeConfig", "fit_probe", "load_probe", "probe_layers"]
