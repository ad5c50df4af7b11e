"""The plan (python -m bench.plan): every way to train one model at one effective batch on a
card, each predicted for memory and time, ranked by the hours to train."""
