"""Autotuned block configs shipped with tnl, per GPU model: a first run on a listed GPU starts without tuning.

Measured by `tuning.pick` (do_bench medians over the candidates in tuning.py) on the GPU named, at the shapes of
benchmarks/bench_attention.py and of training; keys are `role|DxE|dtype|revR|initI|segS` as in `passes.chunk_pass`,
plus `|few` for D or E over 64 with at most one program per SM (`|sub` for a state pass cut into sub-segments);
values (chunk C, E-block BE, num_warps, num_stages[, 1: the chunk loop's tiles through TMA descriptors]). A user's
own tuning results (`$TNL_CACHE_DIR/autotune/`) take precedence while they are still candidates;
`TNL_AUTOTUNE=retune` ignores this table and tunes.
"""

# NVIDIA H100 80GB HBM3 (SXM), triton 3.6.0, 2026-11-23
TUNED: dict[str, dict[str, tuple[int, ...]]] = {
    "NVIDIA H100 80GB HBM3": {
        "dk|128x128|bfloat16|rev1|init0|seg0": (64, 64, 4, 2),
        "dk|128x128|bfloat16|rev1|init0|seg1": (64, 64, 4, 2),
        "dk|128x256|bfloat16|rev1|init0|seg0": (64, 64, 4, 2),
        "dk|128x256|bfloat16|rev1|init0|seg1": (64, 64, 4, 3, 1),  # TMA
        "dk|64x64|bfloat16|rev1|init0|seg0": (64, 64, 4, 3),
        "dk|64x64|bfloat16|rev1|init0|seg1": (64, 64, 4, 3),
        "dq|128x128|bfloat16|rev0|init0|seg0": (64, 64, 4, 2),
        "dq|128x128|bfloat16|rev0|init0|seg1": (64, 64, 4, 2),
        "dq|128x256|bfloat16|rev0|init0|seg0": (64, 64, 4, 2),
        "dq|128x256|bfloat16|rev0|init0|seg1": (64, 64, 4, 3, 1),  # TMA
        "dq|64x64|bfloat16|rev0|init0|seg0": (64, 64, 4, 3),
        "dq|64x64|bfloat16|rev0|init0|seg1": (64, 64, 4, 3),
        "dv|128x128|bfloat16|rev1|init0|seg0": (64, 64, 4, 2),
        "dv|128x128|bfloat16|rev1|init0|seg1": (64, 64, 4, 2),
        "dv|256x128|bfloat16|rev1|init0|seg0": (32, 64, 4, 2),  # retuned 2026-11-24
        "dv|256x128|bfloat16|rev1|init0|seg1": (64, 64, 8, 3, 1),  # TMA
        "dv|64x64|bfloat16|rev1|init0|seg0": (64, 64, 4, 3),
        "dv|64x64|bfloat16|rev1|init0|seg1": (64, 64, 4, 3),
        "fwd|128x128|bfloat16|rev0|init0|seg0": (64, 64, 4, 2),
        "fwd|128x128|bfloat16|rev0|init0|seg1": (64, 64, 4, 2),
        "fwd|256x128|bfloat16|rev0|init0|seg0": (32, 64, 4, 2),  # retuned 2026-11-24
        "fwd|256x128|bfloat16|rev0|init0|seg1": (64, 64, 8, 3, 1),  # TMA
        "fwd|64x64|bfloat16|rev0|init0|seg0": (64, 64, 4, 3),
        "fwd|64x64|bfloat16|rev0|init0|seg1": (64, 64, 4, 3),
        "state|128x128|bfloat16|rev0|init0|seg1": (128, 64, 8, 2),
        "state|128x128|bfloat16|rev1|init0|seg1": (128, 128, 8, 2),
        "state|128x256|bfloat16|rev0|init0|seg1": (128, 64, 8, 2),  # retuned 2026-11-24
        "state|128x256|bfloat16|rev1|init0|seg1": (128, 64, 8, 2),
        "state|256x128|bfloat16|rev0|init0|seg1": (64, 64, 8, 2, 1),  # TMA
        "state|256x128|bfloat16|rev1|init0|seg1": (64, 64, 8, 2, 1),  # TMA
        "state|64x64|bfloat16|rev0|init0|seg1": (128, 64, 8, 2),
        "state|64x64|bfloat16|rev1|init0|seg1": (128, 64, 8, 2),
        # D or E = 256 with at most one wave of programs (`|few`), retuned at B=4, T=16384 (128 programs) on
        # 2026-11-24 without the miscompiled (64, 32, 4, *) configs; dq and dk (4 E-blocks of 64: 256 programs
        # there) not measured apart, their seg0 choice
        "fwd|256x128|bfloat16|rev0|init0|seg0|few": (64, 64, 8, 3, 1),  # TMA
        "dv|256x128|bfloat16|rev1|init0|seg0|few": (64, 64, 8, 3, 1),  # TMA
        # D = E = 128 with at most one wave unsegmented (B=4, T=16384, H=16; B=8, T=4096, H=8), retuned 2026-11-24
        # with three stages, the four passes agreeing over three tuning rounds
        "fwd|128x128|bfloat16|rev0|init0|seg0|few": (64, 64, 4, 3, 1),
        "dq|128x128|bfloat16|rev0|init0|seg0|few": (64, 64, 4, 3, 1),
        "dv|128x128|bfloat16|rev1|init0|seg0|few": (64, 64, 4, 3, 1),
        "dk|128x128|bfloat16|rev1|init0|seg0|few": (64, 64, 4, 3, 1),
        "dq|128x256|bfloat16|rev0|init0|seg0|few": (64, 64, 4, 2),
        "dk|128x256|bfloat16|rev1|init0|seg0|few": (64, 64, 4, 2),
        # one wave of segments (T=32k and 64k at B*T=65,536, H=16), tuned on first use on 2026-11-25
        "fwd|128x128|bfloat16|rev0|init0|seg1|few": (64, 64, 4, 3, 1),
        "dq|128x128|bfloat16|rev0|init0|seg1|few": (64, 64, 4, 3, 1),
        "dv|128x128|bfloat16|rev1|init0|seg1|few": (64, 64, 4, 3, 1),
        "dk|128x128|bfloat16|rev1|init0|seg1|few": (64, 64, 4, 3, 1),
        "fwd|256x128|bfloat16|rev0|init0|seg1|few": (64, 64, 8, 3, 1),
        "dv|256x128|bfloat16|rev1|init0|seg1|few": (64, 64, 8, 3, 1),
        "dq|128x256|bfloat16|rev0|init0|seg1|few": (64, 64, 4, 2),
        "dk|128x256|bfloat16|rev1|init0|seg1|few": (64, 64, 4, 2),
        # state passes cut into sub-segments (`|sub`: 192-512 programs of 2k-4k tokens at T=32k/64k), 2026-11-25
        "state|128x128|bfloat16|rev0|init0|seg1|sub": (64, 64, 4, 2, 1),
        "state|128x128|bfloat16|rev1|init0|seg1|sub": (32, 64, 8, 3, 1),
        "state|256x128|bfloat16|rev0|init0|seg1|sub": (64, 64, 8, 3, 1),
        "state|256x128|bfloat16|rev1|init0|seg1|sub": (64, 64, 8, 3, 1),
        "state|64x64|bfloat16|rev0|init0|seg1|sub": (64, 64, 8, 3, 1),
        "state|64x64|bfloat16|rev1|init0|seg1|sub": (128, 64, 8, 2, 1),
    },
}
