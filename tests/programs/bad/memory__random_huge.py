# expect: memory
# random noise of a huge shape
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    noise = jax.random.normal(key, (50000, 50000))
    update = g + noise[0, 0]
    return update, var1, var2
