# expect: memory
# a Kronecker product of Kronecker products
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    k = jnp.kron(jnp.kron(w, w), w)
    update = g + jnp.mean(k)
    return update, var1, var2
