# expect: forbidden
# *args in a call
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    args = (g, w)
    update = jnp.maximum(*args)
    return update, var1, var2
