"""The baseline: liquidate the whole account at maintenance, no margin call, no tranches.

That is how most perpetual venues and lending markets work. The baseline
runs on the same engine, the same paths and the same population, with risk
parameters that make the engine behave that way (every bound below is one
the engine checks on `set_risk_params`, docs/parameters.md):

- `critical_ratio = 1 - 1e-18`: an account whose ratio falls below 1 (equity
  below maintenance) is CRITICAL, so one `liquidate` closes all of it, at
  once, exempt from the tranche interval and the window cap;
- `call_ratio = 1 + 1e-18`: no account is CALLABLE except at a ratio of
  exactly 1 (to the wei), and the baseline keeper sends no margin calls;
- `close_factor = 1`, `call_reward = 0`;
- the penalty (1.5%), the keeper's share and rewards are unchanged: only the
  mechanism differs, not the price of a liquidation.

Traders get no notice in the baseline, so none of them cures.
"""

from __future__ import annotations

from dataclasses import replace

from margincall.constants import WAD
from margincall.math import RiskParams

PHASED = "phased"
BASELINE = "baseline"
MODES = (PHASED, BASELINE)


def baseline_params(params: RiskParams) -> RiskParams:
    """`params` turned into liquidate-everything-at-maintenance."""
    return replace(
        params,
        call_ratio=WAD + 1,
        critical_ratio=WAD - 1,
        close_factor=WAD,
        call_reward=0,
    )


def params_for(mode: str, params: RiskParams) -> RiskParams:
    if mode == PHASED:
        return params
    if mode == BASELINE:
        return baseline_params(params)
    raise ValueError(f"unknown mode {mode!r}: one of {', '.join(MODES)}")


__all__ = ["BASELINE", "MODES", "PHASED", "baseline_params", "params_for"]
