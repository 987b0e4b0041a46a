# expect: forbidden
# a with block
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    with jax.disable_jit():
        update = g
    return update, var1, var2
