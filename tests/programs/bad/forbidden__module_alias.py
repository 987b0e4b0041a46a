# expect: forbidden
# binding a module to a name to bypass the checks
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    np = jnp
    update = np.sign(g)
    return update, var1, var2
