"""The passes a harness runs on one spec, each with the trackers of bench.measure that it needs:
the timed training steps (and the probe of a batch under the budget), the peak FLOP/s probe."""
