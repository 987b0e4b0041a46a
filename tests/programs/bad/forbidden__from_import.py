# expect: forbidden
# from-import of a private JAX module
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    from jax._src import core
    update = g
    return update, var1, var2
