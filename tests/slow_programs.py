"""Programs that pass ``rayopt check`` on the sandbox's small probe tensors but are
expensive at the networks' real shapes (issue 12): what an LLM writes by accident.

- ``OUTER``: the outer product of the flattened gradient. On the probe's (64, 64) kernel
  it is 4096^2 floats (64 MiB, exactly the probe's cap); on Freeway's (700, 64) kernel it
  is 44,800^2 (8 GB), on Breakout's (400, 64) 25,600^2 (2.6 GB).
- ``matmul_chain(n, k)``: ``k`` chained matmuls on an (n, n) block built from the
  gradient: a fixed cost per tensor per update (2 k n^3 FLOP; 4.3 GFLOP for (512, 16)),
  so a few probe calls are cheap and PPO's thousands of updates are not.
- ``repeat(n)``: ``jnp.sort(jnp.repeat(g.reshape(-1), n))``: n floats per parameter held
  at once; 65 MB on the probe's (64, 64) kernel at n = 4000, 16.8 GB on a (1024, 1024)
  sweep layer.
"""

from __future__ import annotations

OUTER = """def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    x = g.reshape(-1)
    m = jnp.outer(x, x)
    update = g * (1 + jnp.mean(jnp.abs(m)))
    return update, var1, var2
"""


def matmul_chain(n: int = 512, k: int = 16) -> str:
    return f"""def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    m = jnp.resize(g, ({n}, {n}))
    for i in range({k}):
        m = jnp.tanh(m @ m)
    update = jnp.sign(g) * (1 + jnp.mean(m))
    return update, var1, var2
"""


def repeat(n: int = 4000) -> str:
    # sorted, so that XLA must hold the whole repeated array (a reduction of it alone
    # would be fused into one loop and need no memory, only time)
    return f"""def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    r = jnp.sort(jnp.repeat(g.reshape(-1), {n}))
    update = jnp.sign(g) * (1 + jnp.abs(r[0]) + jnp.abs(r[-1]))
    return update, var1, var2
"""


MATMUL_CHAIN = matmul_chain()
REPEAT = repeat()
