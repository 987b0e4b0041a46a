# expect: too_large
# jax.lax.fori_loop with a billion iterations
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = jax.lax.fori_loop(0, 1000000000, lambda i, x: x * 0.5, g)
    return update, var1, var2
