"""LibTorch CPU matmul kernels on the 1.5B model's fused gate/up shape (17,920 x 1,536): the int4 packed kernel
(bf16 in) against dense bf16 and f32 `linear`, medians of 5 interleaved rounds per row count (docs/performance.md,
"How the kernel was chosen").

usage: .venv/bin/python scripts/bench/int4_kernel.py
"""
import torch, time
torch.set_num_threads(2)
N, K = 17920, 1536
q = torch.randint(0, 16, (N, K), dtype=torch.int32)
packed = torch._convert_weight_to_int4pack_for_cpu(q, 1)
sz = (torch.rand(K//32, N, 2)*0.01).to(torch.bfloat16)
wb = torch.randn(N, K).to(torch.bfloat16); wf = wb.float()
for M in [1, 4, 16, 32, 64]:
    xb = torch.randn(M, K).to(torch.bfloat16); xf = xb.float()
    fs = {"int4": lambda: torch._weight_int4pack_mm_for_cpu(xb, packed, 32, sz), "bf16": lambda: torch.nn.functional.linear(xb, wb), "f32": lambda: torch.nn.functional.linear(xf, wf)}
    res = {k: [] for k in fs}
    for r in range(5):
        for k, f in fs.items():
            t = time.perf_counter(); f(); res[k].append(time.perf_counter() - t)
    print(M, {k: round(sorted(v)[2]*1e3, 2) for k, v in res.items()})
