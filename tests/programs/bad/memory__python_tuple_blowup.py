# expect: memory
# a 24 GB Python tuple built at trace time
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    cell = (0.0,)
    big = cell * 3000000000
    update = g
    return update, var1, var2
