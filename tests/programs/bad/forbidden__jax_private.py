# expect: forbidden
# a private JAX module
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = jax._src.numpy.sign(g)
    return update, var1, var2
