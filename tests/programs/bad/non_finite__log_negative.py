# expect: non_finite
# log of a negative number
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = jnp.log(-1.0 - abs(w))
    return update, var1, var2
