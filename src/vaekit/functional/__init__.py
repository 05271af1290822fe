"""Layer 1: pure tensor math (KL terms, likelihood formulas, bounds, schedules). No modules, no I/O."""

from .bounds import iwae_bound, log_mean_exp, log_mean_exp_std_err
from .kl import gaussian_log_prob, gaussian_log_prob_at_eps, kl_normal_std_normal, standard_normal_log_prob
from .schedules import ais_temperatures, kl_weight_at

__all__ = [
    "ais_temperatures",
    "gaussian_log_prob",
    "gaussian_log_prob_at_eps",
    "iwae_bound",
    "kl_normal_std_normal",
    "kl_weight_at",
    "log_mean_exp",
    "log_mean_exp_std_err",
    "standard_normal_log_prob",
]
