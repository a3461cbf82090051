"""KernelOptions: the typed overrides of the Triton attention's plan (segment length, program count, TMA)."""

import pytest

from tnl.ops.lightning_attn.options import KernelOptions, kernel_options, override_kernel_options


def test_defaults_leave_every_choice_to_the_planner():
    assert kernel_options() == KernelOptions() == KernelOptions(seg_len=None, programs=None, tma=True)


def test_override_applies_inside_the_block_and_restores_after():
    with override_kernel_options(seg_len=32) as opts:
        assert opts == kernel_options() == KernelOptions(seg_len=32)
        with override_kernel_options(tma=False, programs=8):
            assert kernel_options() == KernelOptions(seg_len=32, programs=8, tma=False)
        assert kernel_options() == KernelOptions(seg_len=32)
    assert kernel_options() == KernelOptions()
    with pytest.raises(RuntimeError), override_kernel_options(seg_len=64):
        raise RuntimeError("inside")
    assert kernel_options() == KernelOptions()


@pytest.mark.parametrize("field,bad,message", [
    ("seg_len", 100, "KernelOptions.seg_len=100 is not a positive multiple of 16"),
    ("seg_len", -32, "KernelOptions.seg_len=-32 is not a positive multiple of 16"),
    ("seg_len", 0, "KernelOptions.seg_len=0 is not a positive multiple of 16"),
    ("seg_len", "32", "KernelOptions.seg_len='32' is not a positive multiple of 16"),
    ("programs", 0, "KernelOptions.programs=0 is not a positive integer"),
    ("programs", "x", "KernelOptions.programs='x' is not a positive integer"),
    ("tma", "yes", "KernelOptions.tma='yes' is not True or False"),
])
def test_bad_values_get_a_one_line_error_naming_the_field(field, bad, message):
    for make in (lambda: KernelOptions(**{field: bad}), lambda: override_kernel_options(**{field: bad}).__enter__()):
        with pytest.raises(ValueError, match=message) as info:
            make()
        assert "\n" not in str(info.value)
    assert kernel_options() == KernelOptions()


def test_unknown_option_is_named():
    with pytest.raises(ValueError, match="no option seg_length; the options are seg_len, programs, tma"):
        with override_kernel_options(seg_length=32):
            pass
