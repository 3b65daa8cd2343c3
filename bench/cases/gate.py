NAME = "gate"
TITLE = "todo"


def run(rig, runs, warmup):
    from bench.rig import BenchError

    raise BenchError("not written yet")
