# expect: signature
# a module-level constant
EPS = 1e-8


def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = g / (jnp.abs(g) + EPS)
    return update, var1, var2
