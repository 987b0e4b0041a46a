# expect: forbidden
# jax.lax.while_loop that never ends
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = jax.lax.while_loop(lambda x: True, lambda x: x * 0.5, g)
    return update, var1, var2
