import platform

import pytest

from watchgate.memory import tune_allocator


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt tuning applies to glibc only")
def test_allocator_tuned_on_glibc():
    assert tune_allocator() is True
