"""tools/reaction_time.py: how a published genre sequence is read against an abrupt change."""

from __future__ import annotations

import importlib.util
import math
import sys

import numpy as np
import pytest
from e2e_helpers import REPO

from streamclf.config import SmoothingConfig


def _load_tool():
    spec = importlib.util.spec_from_file_location("reaction_time",
                                                  REPO / "tools" / "reaction_time.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["reaction_time"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


rt = _load_tool()
T_END_S = np.arange(1.0, 11.0)  # windows ending 1 .. 10 s; the join at 4.5 s


class TestMeasure:
    def test_reaction_from_the_join_to_the_first_new_genre(self):
        published = ["rock"] * 5 + ["unknown"] * 2 + ["jazz"] * 3
        r = rt.measure(published, T_END_S, join_s=4.5, old="rock", new="jazz")
        assert (r.reaction_s, r.wrong, r.old_held_s, r.changes) == (3.5, False, 0.5, 2)

    def test_another_genre_between_is_wrong(self):
        published = ["rock"] * 5 + ["pop", "unknown"] + ["jazz"] * 3
        assert rt.measure(published, T_END_S, join_s=4.5, old="rock", new="jazz").wrong

    def test_a_genre_after_the_reaction_is_not_counted(self):
        published = ["rock"] * 5 + ["jazz", "pop"] + ["jazz"] * 3
        assert not rt.measure(published, T_END_S, join_s=4.5, old="rock", new="jazz").wrong

    def test_never_reached_is_infinitely_slow(self):
        r = rt.measure(["rock"] * 10, T_END_S, join_s=4.5, old="rock", new="jazz")
        assert math.isinf(r.reaction_s)
        summary = rt.summarise([r, r, rt.Reaction(2.0, False, 0.0, 1)])
        assert (summary["median_s"], summary["never"]) == (math.inf, 2)


class TestVariant:
    def test_replaces_the_named_keys(self):
        base = SmoothingConfig()
        v = rt.parse_variant("time_constant_s=2,min_dwell_s=1", base)
        assert (v.time_constant_s, v.min_dwell_s, v.switch_margin) == (2.0, 1.0, base.switch_margin)

    @pytest.mark.parametrize("text", ["tau=2", "min_dwell_s=soon"])
    def test_bad_variant_is_a_config_error(self, text):
        with pytest.raises(rt.ConfigError, match="--variant"):
            rt.parse_variant(text, SmoothingConfig())
