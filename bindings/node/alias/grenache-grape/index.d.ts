export * from 'grenache-native/grape'
