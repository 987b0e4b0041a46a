# expect: timeout
# timeout: 3
# legal-looking, but 16 matmuls of 2048 x 2048
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    big = jnp.ones((2048, 2048)) * jnp.mean(w)
    x = big
    for i in range(16):
        x = x @ big
    update = g + x[0, 0] * 0.0
    return update, var1, var2
