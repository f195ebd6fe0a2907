from watchgate.config.model import RestartPolicyConfig
from watchgate.restart import RestartPolicy


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_policy(clock, **settings):
    config = RestartPolicyConfig(**{"backoff_initial": 1.0, "backoff_max": 8.0, "max_restarts": 3,
                                    "restart_window": 60.0, "healthy_after": 30.0, **settings})
    return RestartPolicy(config, clock=clock, uniform=lambda low, high: 1.0)


def test_backoff_doubles_up_to_max():
    clock = FakeClock()
    policy = make_policy(clock, max_restarts=10)
    delays = []
    for _ in range(6):
        policy.started()
        clock.now += 1
        delays.append(policy.failed())
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_gives_up_after_max_restarts_in_window():
    clock = FakeClock()
    policy = make_policy(clock)
    results = []
    for _ in range(4):
        policy.started()
        clock.now += 1
        results.append(policy.failed())
    assert results[:3] == [1.0, 2.0, 4.0]
    assert results[3] is None


def test_healthy_run_resets_failures():
    clock = FakeClock()
    policy = make_policy(clock)
    for _ in range(3):
        policy.started()
        clock.now += 1
        policy.failed()
    policy.started()
    clock.now += 31
    assert policy.failed() == 1.0


def test_old_failures_leave_window():
    clock = FakeClock()
    policy = make_policy(clock, healthy_after=1000.0)
    for _ in range(3):
        policy.failed()
        clock.now += 25
    assert policy.failed() is not None


def test_jitter_applied_to_delay():
    config = RestartPolicyConfig(backoff_initial=10.0)
    policy = RestartPolicy(config, clock=FakeClock(), uniform=lambda low, high: high)
    assert policy.failed() == 12.0
