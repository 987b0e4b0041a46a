# expect: forbidden
# a list comprehension
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    parts = [g * 0.5 for i in range(3)]
    update = parts[0]
    return update, var1, var2
