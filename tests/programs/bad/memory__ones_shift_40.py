# expect: memory
# jnp.ones((1 << 40,)) (4 TB)
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    big = jnp.ones((1 << 40,))
    update = g + big[0]
    return update, var1, var2
