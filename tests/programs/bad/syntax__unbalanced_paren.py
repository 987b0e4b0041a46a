# expect: syntax
# an unclosed parenthesis
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = jnp.sqrt(jnp.sum(w ** 2)
    return update, var1, var2
