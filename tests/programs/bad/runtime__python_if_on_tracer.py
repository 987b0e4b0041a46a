# expect: runtime
# Python if on a traced value
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = g
    if jnp.mean(g) > 0:
        update = -g
    return update, var1, var2
