# expect: runtime
# float() of a traced value
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    lr = float(jnp.mean(jnp.abs(g)))
    update = lr * g
    return update, var1, var2
