# expect: shape
# stores a scalar in var2
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = g
    var2 = jnp.mean(g ** 2)
    return update, var1, var2
