# expect: memory
# a 100000 x 100000 array (40 GB)
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    big = jnp.zeros((100000, 100000))
    update = g + big[0, 0]
    return update, var1, var2
