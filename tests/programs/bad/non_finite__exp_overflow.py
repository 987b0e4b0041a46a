# expect: non_finite
# exp of a large number
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = g * jnp.exp(1000.0 * (1.0 + w))
    return update, var1, var2
