# expect: shape
# an outer product changes the shape
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = jnp.outer(g, d)
    return update, var1, var2
