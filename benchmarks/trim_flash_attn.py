"""For benchmarks only: trim flash-attn 2.8.3's build to what Qwen2.5 needs (bf16, head dims 64 and 128).

The full build compiles 72 kernel files; these 12 built in under 11 min on 16 cores (H100 machine). The kept kernels
are compiled exactly as in the full build, and the dispatch refuses fp16 and other head dims instead of
running a wrong kernel. Teams install the full build (install_env.sbatch). Run inside the unpacked sdist:

    tar xzf flash_attn-2.8.3.tar.gz && cd flash_attn-2.8.3 && python3 ../benchmarks/trim_flash_attn.py
    FLASH_ATTENTION_FORCE_BUILD=TRUE FLASH_ATTN_CUDA_ARCHS=90 MAX_JOBS=14 NVCC_THREADS=1 python3 setup.py bdist_wheel
"""
import re
from pathlib import Path

setup = Path("setup.py")
text = setup.read_text()
kept, dropped = [], []


def keep(match):
    name = match.group(0)
    if "_fp16_" in name or re.search(r"_hdim(32|96|192|256)_", name):
        dropped.append(name)
        return ""
    kept.append(name)
    return match.group(0)


text = re.sub(r'\s*"csrc/flash_attn/src/flash_[a-z_]+hdim\d+_(fp16|bf16)[a-z_]*_sm80\.cu",', keep, text)
setup.write_text(text)
print(f"kept {len(kept)} kernel files, dropped {len(dropped)}")

switch = Path("csrc/flash_attn/src/static_switch.h")
s = switch.read_text()
fp16 = s[s.index("#define FP16_SWITCH"):s.index("#define HEADDIM_SWITCH")]
s = s.replace(fp16, """#define FP16_SWITCH(COND, ...)               \\
  [&] {                                      \\
    TORCH_CHECK(!(COND), "bench build of flash-attn: bf16 only"); \\
    using elem_type = cutlass::bfloat16_t;   \\
    return __VA_ARGS__();                    \\
  }()

""")
start = s.index("#define HEADDIM_SWITCH")
end = s.index("}()", start) + 3
s = s[:start] + """#define HEADDIM_SWITCH(HEADDIM, ...)   \\
  [&] {                                    \\
    TORCH_CHECK(HEADDIM == 64 || HEADDIM == 128, "bench build of flash-attn: head dim 64 or 128 only"); \\
    if (HEADDIM <= 64) {                   \\
      constexpr static int kHeadDim = 64;  \\
      return __VA_ARGS__();                \\
    } else {                               \\
      constexpr static int kHeadDim = 128; \\
      return __VA_ARGS__();                \\
    }                                      \\
  }()""" + s[end:]
switch.write_text(s)
